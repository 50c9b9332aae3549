"""Where the work runs: the communication seam between BESS workers, devices and threads."""
