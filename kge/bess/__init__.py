"""BESS data: the entity partition, sharding to Parquet by bucket, balanced sampling, features."""
