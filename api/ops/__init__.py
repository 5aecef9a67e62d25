"""The operators' view: components, Kafka, lag, rates and the overview built from them."""
