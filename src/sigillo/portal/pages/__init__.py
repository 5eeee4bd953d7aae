"""Page handlers of the portal, one module per area."""
