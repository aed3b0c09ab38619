"""What a run leaves and what identifies it, below every other package: the record file and the config
hash (store), the machine (hardware), the data read (provenance), per-example predictions."""
