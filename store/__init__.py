"""The calibration store: SQLAlchemy schema on DuckDB."""

__all__: list[str] = []
