"""sigillo: secure email delivery, verified TLS first, a web portal otherwise."""
