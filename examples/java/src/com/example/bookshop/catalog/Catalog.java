package com.example.bookshop.catalog;

import com.example.bookshop.model.Book;
import com.example.bookshop.model.Isbn;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class Catalog {
  private final Map<Isbn, CatalogEntry> entries = new LinkedHashMap<>();
  public void add(Book book, int stock) { entries.put(book.isbn(), new CatalogEntry(book, stock)); }
  public CatalogEntry find(Isbn isbn) { CatalogEntry entry = entries.get(isbn); if (entry == null) { throw new IllegalArgumentException("unknown book " + isbn); } return entry; }
  public List<CatalogEntry> entries() { return new ArrayList<>(entries.values()); }
}
