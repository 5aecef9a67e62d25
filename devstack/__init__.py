"""Real services started on this machine without Docker: PostgreSQL+TimescaleDB, Mosquitto and Tansu.

Used by ``cityingest dev`` (the embedded stack) and by the test fixtures. Every launcher starts its
service as a child process tied to ours (it dies with us, even on ``kill -9``), on a free or chosen
port, in a directory of ours, and stops it cleanly.
"""
