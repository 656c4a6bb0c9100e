"""Tests of unionfs, and the support code they share."""
