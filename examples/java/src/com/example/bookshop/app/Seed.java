package com.example.bookshop.app;

import com.example.bookshop.catalog.Catalog;
import com.example.bookshop.model.Author;
import com.example.bookshop.model.Book;
import com.example.bookshop.model.Category;
import com.example.bookshop.model.Isbn;
import com.example.bookshop.model.Price;
import com.example.bookshop.util.Money;

public final class Seed {
  private Seed() {}
  public static Catalog catalog() { Catalog catalog = new Catalog(); catalog.add(book("9780000000011", "The Warm Compiler", "A. Turing", Category.SCIENCE, 4200), 5); catalog.add(book("9780000000028", "Persistent Tales", "G. Hopper", Category.FICTION, 1850), 12); catalog.add(book("9780000000035", "A Short History of Builds", "K. Thompson", Category.HISTORY, 2999), 3); return catalog; }
  private static Book book(String isbn, String title, String author, Category category, long cents) { return new Book(new Isbn(isbn), title, new Author(author), category, new Price(Money.ofCents(cents))); }
}
