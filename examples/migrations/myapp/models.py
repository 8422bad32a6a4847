"""The models: what `alembic revision --autogenerate` and check_migrations compare with."""

from __future__ import annotations

from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Lookup(Base):
    __tablename__ = "lookup"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20))

    __table_args__ = (Index("ix_small", "code"),)
