"""dlt peer for bench/compare.sh: one table from a SQL source to local parquet files."""
import sys

import dlt
from dlt.sources.sql_database import sql_table

url, schema, table, out = sys.argv[1:5]
pipeline = dlt.pipeline(
    pipeline_name="bench_cmp",
    destination=dlt.destinations.filesystem(bucket_url="file://" + out),
    dataset_name="bench",
)
source = sql_table(credentials=url, schema=schema, table=table, backend="pyarrow")
pipeline.run(source, loader_file_format="parquet")
