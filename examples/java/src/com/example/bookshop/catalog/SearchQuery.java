package com.example.bookshop.catalog;

import com.example.bookshop.model.Book;
import com.example.bookshop.model.Category;

public final class SearchQuery {
  private final String text;
  private final Category category;
  public SearchQuery(String text, Category category) { this.text = text == null ? "" : text.toLowerCase(); this.category = category; }
  public boolean matches(Book book) { return (category == null || book.category() == category) && (text.isEmpty() || book.title().toLowerCase().contains(text)); }
}
