"""The staff console: accounts with password and TOTP, sessions, roles, and its pages."""
