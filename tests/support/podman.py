"""The container steps the podman tests run with each mount program."""

from collections.abc import Callable, Sequence

CHANGE = "echo saved > /data/saved && rm /data/built && mkdir -p /etc/x && touch /etc/x/y"


def container_steps(pm: Callable[..., str], opts: Sequence[str], show: str) -> dict[str, str]:
    """On the image ``localhost/bb:1``: a ``run --rm`` that writes, deletes and
    chowns; the root filesystem's type, ``touch /`` and ``chown 0:0 /``; a
    ``run`` of container ``c1`` (left for the caller to mount and remove),
    committed as ``localhost/bb:2`` and run. `show` prints what a step left;
    `opts` go to every ``run``. What each step printed, by step."""
    out: dict[str, str] = {}
    out["run --rm"] = pm(
        "run", "--rm", *opts, "localhost/bb:1", "sh", "-c",
        f"echo new > /data/new && rm /data/built && chown 7:8 /data/new && {show}",
    )  # fmt: skip
    out["root fs"] = pm(
        "run", "--rm", *opts, "localhost/bb:1", "sh", "-c",
        "grep ' / ' /proc/mounts | cut -d' ' -f3; touch / && chown 0:0 / && echo ok",
    )  # fmt: skip
    pm("run", "--name", "c1", *opts, "localhost/bb:1", "sh", "-c", CHANGE)
    pm("commit", "c1", "localhost/bb:2")
    out["commit"] = pm("run", "--rm", *opts, "localhost/bb:2", "sh", "-c", f"{show}; ls /etc/x")
    return out
