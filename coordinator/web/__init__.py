"""The household's web app on the coordinator (docs/WEB.md)."""
