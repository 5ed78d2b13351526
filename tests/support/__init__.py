"""What the tests (and the benchmark scripts) share: keys, config files, daemon processes,
experiment trees on disk, wire helpers. No test module imports another test module."""
