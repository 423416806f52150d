"""LangChain's standard VectorStore suite (sync and async, get_by_ids),
against TenantVecStore on a real worker, a fresh tenant per test: once with
a LangChain Embeddings object (vectors sent), once with the worker embedding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from tenantvec import SyncTenantVecClient, TenantVecStore

from .conftest import new_tenant


class TestClientEmbeddings(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, vec_client: SyncTenantVecClient) -> Iterator[TenantVecStore]:  # type: ignore[override]
        tenant = new_tenant("std")
        store = TenantVecStore(tenant, embedding=self.get_embeddings(), client=vec_client)
        try:
            yield store
        finally:
            vec_client.drop(tenant)


class TestWorkerEmbeds(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, text_client: SyncTenantVecClient) -> Iterator[TenantVecStore]:  # type: ignore[override]
        tenant = new_tenant("stdw")
        store = TenantVecStore(tenant, client=text_client)
        try:
            yield store
        finally:
            text_client.drop(tenant)
