"""The contract every cityingest stage agrees on: reading model, wire format, topics, settings, errors.

Nothing in ``core`` performs I/O; ``ingest``, ``consumers`` and ``api`` import it and never each other.
"""
