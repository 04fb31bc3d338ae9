"""kittyterm's screens: main (training + preview), gallery, help and a yes/no dialog."""

from .confirm import ConfirmScreen
from .gallery import GalleryScreen
from .help import HelpScreen
from .main import MainScreen

__all__ = ["ConfirmScreen", "GalleryScreen", "HelpScreen", "MainScreen"]
