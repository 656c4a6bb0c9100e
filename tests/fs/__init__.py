"""Tests of unionfs.fs."""
