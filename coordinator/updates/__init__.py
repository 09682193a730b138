"""Firmware releases between coordinators and to meters (docs/UPDATES.md)."""
