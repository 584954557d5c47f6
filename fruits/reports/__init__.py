"""The CLI's reports and actions over the ledger without Spark: status, retry."""
