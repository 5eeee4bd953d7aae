"""``sigillo`` subcommands, one module per area; ``sigillo.cli`` assembles them."""
