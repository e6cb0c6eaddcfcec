"""A team's production automations on Dagster, hardened so that people can depend on them."""
