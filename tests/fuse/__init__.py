"""Tests of unionfs.fuse."""
