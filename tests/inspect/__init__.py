"""Tests of unionfs.inspect."""
