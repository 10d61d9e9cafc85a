"""dagon — an asyncio-native workflow engine for the compute continuum."""

__version__ = "0.1.0"
