"""Worker tests reuse the image fixtures (a migrated database, image factory)."""

from tests.images.conftest import make_image, settings  # noqa: F401
