"""gearproto.fuzz: fuzz-testing for Gearman servers and for gearproto itself."""
