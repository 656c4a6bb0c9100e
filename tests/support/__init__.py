"""What the tests share: kernel mounts, layer stacks, trees, images, the command line."""
