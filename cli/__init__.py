"""The ``cityingest`` command line: one entry point for every component and the embedded dev stack."""
