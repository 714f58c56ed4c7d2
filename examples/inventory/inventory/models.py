"""SQLAlchemy models for the schema at the head revision (0003).

Alembic's env.py uses ``metadata`` as ``target_metadata``, so
``alembic check`` (and the test in tests/test_function_scope.py) can confirm
the models and the migrations agree.
"""

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Location(Base):
    __tablename__ = "locations"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (Index("ix_items_location_batch", "location_code", "batch_number"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    sku: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(server_default=text("0"))
    location_code: Mapped[str] = mapped_column(Text, ForeignKey("locations.code"))
    batch_number: Mapped[int]
    serial_number: Mapped[int]
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.now())

    @property
    def inventory_code(self) -> str:
        """The combined code that 0001 stored, e.g. ``WH01-B0042-S000123``."""
        return f"{self.location_code}-B{self.batch_number:04d}-S{self.serial_number:06d}"


metadata = Base.metadata
