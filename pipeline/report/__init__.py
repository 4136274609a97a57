"""The report: Table 1 (tokens x tasks), the loss curve and the token-efficiency figure."""
