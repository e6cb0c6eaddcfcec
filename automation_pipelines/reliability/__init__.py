"""The hardening layer every automation builds on; nothing automation-specific lives here."""
