"""pansharpen: pansharpen real satellite scenes into georeferenced imagery.

The library is organised so that each concern lives in one place:

- :mod:`pansharpen_cli.raster`   - all raster I/O and georeferencing (rasterio lives here only)
- :mod:`pansharpen_cli.tiling`   - pure window math (tiles, context, feathering weights)
- :mod:`pansharpen_cli.resample` - tile-safe upsampling of MS onto the PAN grid
- :mod:`pansharpen_cli.methods`  - classical fusion methods behind one interface
- :mod:`pansharpen_cli.models`   - neural networks (torch only, nothing of rasterio)
- :mod:`pansharpen_cli.pipeline` - composes the above into ``fuse``
- :mod:`pansharpen_cli.cli`      - the command line (the only user of typer/rich)
"""

__version__ = "0.1.0"
