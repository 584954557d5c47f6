"""The home: locations, storage, Delta tables, the ledger, locks, S3, the PCA model store."""
