"""cimtwin: IoT sensing and digital-twin backend for a district safety monitoring centre."""

__version__ = "0.1.0"
