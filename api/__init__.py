"""The cityingest REST API: metrics for city systems, statistics for NSOs, lag and health for operators."""
