import sys

from unet_tiles.cli import main

if __name__ == "__main__":
    sys.exit(main())
