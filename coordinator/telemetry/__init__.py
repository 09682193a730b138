"""MQTT publishing and Home Assistant discovery."""
