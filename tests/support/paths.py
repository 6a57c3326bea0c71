from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
IMAGES = FIXTURES / "images"
MODELS = FIXTURES / "models"
DEFAULT_MODEL = PROJECT_ROOT / "models" / "default"
PACKAGES = ("twinfer", "service", "workers")  # what pyproject.toml installs: the core and the two processes
