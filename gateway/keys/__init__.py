"""Keys managed at runtime: a database of keys beside the config file's.

`store` mirrors the database in memory and follows every replica's writes, `schema` holds
the tables and their migrations, `admin` the `/admin/keys` API, `openapi` its document.
"""
