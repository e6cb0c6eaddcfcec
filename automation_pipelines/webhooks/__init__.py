"""The webhook receiver: signed POSTs from other systems, verified and committed to a durable
inbox before they are acknowledged, so no event is lost while Dagster is busy or down."""
