package com.example.bookshop.model;

import com.example.bookshop.util.Checks;

public final class Author {
  private final String name;
  public Author(String name) { this.name = Checks.notNull(name, "author"); }
  public String name() { return name; }
  @Override public String toString() { return name; }
}
