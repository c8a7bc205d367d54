"""The Tessera sync client."""
