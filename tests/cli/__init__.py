"""Tests of unionfs.cli."""
