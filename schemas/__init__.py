"""The contracts: pydantic models shared by ingest, store and api. Imports nothing of ours."""

from .readings import CanonicalMessage, CanonicalReading
from .registry import Device, DeviceIn, Sensor, SensorIn, Vendor, VendorIn

__all__ = ["CanonicalMessage", "CanonicalReading", "Device", "DeviceIn", "Sensor", "SensorIn", "Vendor", "VendorIn"]
