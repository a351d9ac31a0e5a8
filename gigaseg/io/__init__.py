"""Sources (GeoTIFF, NIfTI, Zarr) and sinks (the Zarr mask store, COG and NIfTI export)."""
