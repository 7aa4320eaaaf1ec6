package com.example.bookshop.util;

public final class Result<T> {
  private final T value;
  private final String error;
  private Result(T value, String error) { this.value = value; this.error = error; }
  public static <T> Result<T> ok(T value) { return new Result<>(value, null); }
  public static <T> Result<T> failure(String error) { return new Result<>(null, error); }
  public boolean isOk() { return error == null; }
  public T value() { if (!isOk()) { throw new IllegalStateException(error); } return value; }
  public String error() { return error; }
}
