"""The app, as in Celery's "Next Steps" guide, with zcell's import (and no broker)."""

from zcell import App

app = App("proj", include=["proj.tasks"])

# Optional configuration, see the application user guide.
app.conf.update(
    result_expires=3600,
)

if __name__ == "__main__":
    app.start()
