"""Modbus meters and inverters, GPIO relays and LEDs."""
