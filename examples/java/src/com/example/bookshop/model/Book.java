package com.example.bookshop.model;

public final class Book {
  private final Isbn isbn;
  private final String title;
  private final Author author;
  private final Category category;
  private final Price price;
  public Book(Isbn isbn, String title, Author author, Category category, Price price) { this.isbn = isbn; this.title = title; this.author = author; this.category = category; this.price = price; }
  public Isbn isbn() { return isbn; }
  public String title() { return title; }
  public Author author() { return author; }
  public Category category() { return category; }
  public Price price() { return price; }
  @Override public String toString() { return title + " by " + author; }
}
