"""The application code the example tests exercise."""

from __future__ import annotations

from sqlalchemy import ForeignKey, select, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    title: Mapped[str]
    author: Mapped[Author] = relationship(back_populates="books")


def transfer(session: Session) -> None:
    """Move 10 from account 1 to account 2: a unit of work run_transaction may re-run."""
    session.execute(update(Account).where(Account.id == 1).values(balance=Account.balance - 10))
    session.execute(update(Account).where(Account.id == 2).values(balance=Account.balance + 10))


def render_author_list(session: Session, *, eager: bool = True) -> list[str]:
    """Each author with their books: two queries when eager, one per author when not."""
    stmt = select(Author).order_by(Author.id)
    if eager:
        stmt = stmt.options(selectinload(Author.books))
    return [f"{a.name}: {', '.join(b.title for b in a.books)}" for a in session.scalars(stmt)]


def load_dashboard(engine: object) -> int:
    with Session(engine) as session:  # type: ignore[call-overload]
        return len(render_author_list(session))
